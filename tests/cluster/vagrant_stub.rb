# Evaluates a Vagrantfile without Vagrant: a recording stand-in for the parts of
# the Vagrant DSL the lab uses, printing what was configured as JSON.
# Usage: ruby vagrant_stub.rb path/to/Vagrantfile
require "json"

# Records `provider.setting = value` assignments.
class ProviderRecorder
  attr_reader :settings

  def initialize
    @settings = {}
  end

  def method_missing(name, *args)
    key = name.to_s
    return super unless key.end_with?("=")

    @settings[key.chomp("=")] = args.first
  end

  def respond_to_missing?(name, include_private = false)
    name.to_s.end_with?("=") || super
  end
end

# Records config.vm.*: settings, networks, providers, provisioners, machines.
class VmRecorder
  attr_reader :data

  def initialize
    @data = { "settings" => {}, "networks" => [], "providers" => {}, "provisioners" => [],
              "synced_folders" => [], "machines" => [] }
  end

  def define(name, **options)
    child = ConfigRecorder.new
    yield child if block_given?
    @data["machines"] << { "name" => name.to_s, "options" => options.transform_keys(&:to_s), "vm" => child.vm.data }
  end

  def network(type, **options)
    @data["networks"] << { "type" => type.to_s }.merge(options.transform_keys(&:to_s))
  end

  def provider(name)
    recorder = ProviderRecorder.new
    yield recorder if block_given?
    (@data["providers"][name.to_s] ||= {}).merge!(recorder.settings)
  end

  def provision(name, **options)
    @data["provisioners"] << { "name" => name.to_s }.merge(options.transform_keys(&:to_s))
  end

  def synced_folder(source, destination, **_options)
    @data["synced_folders"] << [source, destination]
  end

  def method_missing(name, *args)
    key = name.to_s
    return super unless key.end_with?("=")

    @data["settings"][key.chomp("=")] = args.first
  end

  def respond_to_missing?(name, include_private = false)
    name.to_s.end_with?("=") || super
  end
end

class ConfigRecorder
  attr_reader :vm

  def initialize
    @vm = VmRecorder.new
  end
end

module Vagrant
  @configs = []

  class << self
    attr_reader :configs
  end

  def self.configure(version)
    raise ArgumentError, "unexpected Vagrant config version #{version.inspect}" unless version == "2"

    config = ConfigRecorder.new
    yield config
    @configs << config
  end
end

load File.expand_path(ARGV.fetch(0))
puts JSON.generate(Vagrant.configs.map { |config| config.vm.data })
