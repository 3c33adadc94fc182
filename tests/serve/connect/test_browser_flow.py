"""The whole hosted connect in a real browser (Debian's Chromium via Selenium) against DOT's real login and consent
pages: the platform asks for a URL, the end user opens it, signs in at DOT, presses Authorize, and lands on the
broker's result page; then the broker's token route serves the new grant and a webhook says it is connected."""

from __future__ import annotations

import time

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from grantkeeper import Secret
from grantkeeper.notify import verify_signature
from tests.browser import browser, screenshot
from tests.serve.conftest import make_key
from tests.serve.connect.conftest import WEBHOOK_SECRET, Hosted

__all__ = ["browser"]  # the fixture, imported for pytest

pytestmark = pytest.mark.slow


def _wait_for(driver: WebDriver, what: str, ready: object, timeout: float = 60) -> None:
    WebDriverWait(driver, timeout).until(ready, message=what)  # type: ignore[arg-type]


def test_an_end_user_connects_a_grant_in_a_browser(hosted: Hosted, browser: WebDriver) -> None:
    answer = hosted.create("acme-42")
    assert answer.status_code == 201, answer.text
    created = answer.json()
    assert set(created) == {"id", "url", "expires_at"}
    assert created["url"].startswith(hosted.server.url + "/connect?token=gkc_")
    assert 590 <= created["expires_at"] - time.time() <= 600  # the default: ten minutes

    browser.get(created["url"])
    assert browser.find_element(By.ID, "grant").text == "acme-42"
    assert "read, write" in browser.find_element(By.ID, "scopes").text
    hosted.captures.append(("start page", browser.page_source))
    screenshot(browser, "connect-start")
    browser.find_element(By.ID, "continue").click()

    # DOT's own pages: Django's login form, then the consent form.
    _wait_for(browser, "DOT's login page", lambda d: d.find_elements(By.ID, "login-form"))
    browser.find_element(By.NAME, "username").send_keys(hosted.dot.accounts.username)
    browser.find_element(By.NAME, "password").send_keys(hosted.dot.accounts.password)
    browser.find_element(By.CSS_SELECTOR, "#login-form [type=submit]").click()
    _wait_for(browser, "DOT's consent page", lambda d: d.find_elements(By.ID, "authorizationForm"))
    screenshot(browser, "connect-dot-consent")
    browser.find_element(By.NAME, "allow").click()

    _wait_for(browser, "the broker's result page", lambda d: "/oauth/callback" in d.current_url
              and d.find_elements(By.ID, "title"))  # fmt: skip
    hosted.remember_code(browser.current_url)
    assert hosted.codes, "DOT sent no code back"
    assert browser.find_element(By.ID, "title").text == "dot is connected"
    assert browser.find_element(By.ID, "session").text == created["id"]
    hosted.captures.append(("result page", browser.page_source))
    screenshot(browser, "connect-connected")
    # (Cookies are per host, not per port: DOT's own are visible here too.)
    assert not [c for c in browser.get_cookies() if c["name"].startswith("gk_connect_")], "the cookie outlived its use"

    # The broker serves the new grant: a token DOT's resource accepts.
    token_key = make_key(hosted.store_url, "app", grants="acme-*", scopes="token,read")
    with hosted.api(token_key) as http:
        served = hosted.keep("token", http.get("/v1/grants/acme-42/token"))
        assert served.status_code == 200, served.text
        assert hosted.dot.resource_status(served.json()["access_token"])[0] == 200
        status = http.get("/v1/grants/acme-42").json()
    assert status["provider"] == "dot" and status["generation"] == served.json()["generation"]
    assert status["scopes"] == ["read", "write"]

    [event] = hosted.events(1)
    assert (event["kind"], event["grant"], event["cause"]) == ("connected", "acme-42", "connected")
    assert event["evidence"]["session"] == created["id"]  # type: ignore[index]
    assert event["evidence"]["refresh_fp"] == status["refresh_fp"]  # type: ignore[index]
    assert verify_signature(Secret(WEBHOOK_SECRET), hosted.hooks.bodies[0], hosted.hooks.signatures[0], now=time.time())

    # Replaying the link after it was used shows a refusal, not the start page again.
    browser.get(created["url"])
    assert browser.find_element(By.ID, "code").text == "connect_session_used"
    hosted.captures.append(("replay page", browser.page_source))
    screenshot(browser, "connect-link-used")
    # The link's own secret is in the answer that made it and in the start page's form, never in the log.
    assert created["url"].split("token=", 1)[1] not in hosted.server.log_text()
    secrets = hosted.secrets()
    assert len(secrets) >= 4  # the code, the verifier, the refresh and the access token
    # The access token is in the one answer whose job is to give it; every other capture is scanned.
    hosted.captures = [c for c in hosted.captures if c[0] != "token"]
    assert not hosted.leaks()
