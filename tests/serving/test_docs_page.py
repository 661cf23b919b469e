"""The service's API page (`/docs`) in a real browser: Swagger UI renders and lists the
endpoints, with every asset served by the service itself (Chromium can reach nothing but
loopback, so an asset fetched from a CDN would leave the page blank). Screenshot kept in
test-artifacts/screenshots/."""

from __future__ import annotations

import shutil

import pytest

from tests.browser import Browser
from tests.support import REPO_ROOT, start_service

pytestmark = pytest.mark.slow
SCREENSHOTS = REPO_ROOT / "test-artifacts" / "screenshots"


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is installed by .ci/run")
def test_the_service_docs_page_lists_the_api(mlflow_server, tmp_path) -> None:
    with start_service(tmp_path / "service", mlflow_server.uri, None) as service, \
            Browser(resolver_rules="MAP * ~NOTFOUND, EXCLUDE 127.0.0.1") as browser:
        page = browser.new_page()
        page.goto(f"{service.url}/docs")
        try:
            page.wait_for_text("predictionForTomorrow", "/model", timeout=30)
        finally:
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(SCREENSHOTS / "service-docs.png")
        failed = [(status, url) for status, url in page.responses() if status >= 400 and "favicon" not in url]
        assert failed == [], failed
        fetched = [url for _, url in page.responses() if not url.startswith("data:")]  # inline images
        assert fetched and all(url.startswith(service.url) for url in fetched), fetched
