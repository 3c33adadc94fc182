"""The console in a real browser (Debian's Chromium through Selenium, tests/browser.py) against a real
``grantkeeper serve`` and the provider simulator: sign in, read the grants list, open a failing grant and read the
doctor's class and evidence, press "refresh now" and see the generation change, revoke with confirmation.

The screenshots of the main pages go to tests/artifacts/screenshots/ (docs/console.md shows copies).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

from grantkeeper import Keeper
from grantkeeper._exceptions import GrantkeeperError
from grantkeeper.testing.simulator import ProviderSimulator
from tests.browser import browser, screenshot
from tests.helpers import provider_for
from tests.serve.conftest import ServeProcess, make_key

__all__ = ["browser"]  # the fixture, imported to be found

Start = Callable[..., ServeProcess]


def _store_with_grants(store_url: str, sim: ProviderSimulator) -> str:
    """Healthy grants refreshed a few times, and acme-2 whose token family the provider revoked: it failed.
    Returns the doctor's cause for acme-2, as `grantkeeper doctor` gives it."""
    with Keeper.open(store_url) as keeper:
        keeper.add_provider(provider_for(sim, name="acme"))
        for name in ("acme-1", "acme-2", "acme-3", "billing-eu", "billing-us"):
            keeper.import_grant(name, provider="acme", refresh_token=sim.issue_grant())
        for name in ("acme-1", "acme-2", "acme-3", "billing-eu"):
            for _ in range(3):
                keeper.refresh(name, force=True)
        current = keeper.store.get_grant("acme-2").refresh_token
        assert current is not None
        sim.revoke_family(current.reveal())
        with pytest.raises(GrantkeeperError):
            keeper.refresh("acme-2", force=True)
        return keeper.doctor("acme-2").cause


def _wait(driver: WebDriver, css: str) -> str:
    found = expected_conditions.presence_of_element_located((By.CSS_SELECTOR, css))
    return str(WebDriverWait(driver, 30).until(found).text)


def _listed(driver: WebDriver) -> list[str | None]:
    return [r.get_attribute("data-grant") for r in driver.find_elements(By.CSS_SELECTOR, "tr.grant")]


def test_operator_reads_the_grants_diagnoses_and_refreshes(browser: WebDriver, serve_store: str,
                                                           make_sim: Callable[..., ProviderSimulator],
                                                           serve_process: Start) -> None:  # fmt: skip
    sim = make_sim()
    cause = _store_with_grants(serve_store, sim)
    assert cause != "healthy"
    key = make_key(serve_store, "operator", scopes="ui,refresh")
    server = serve_process(serve_store)

    browser.get(f"{server.url}/ui/grants")
    assert browser.current_url.endswith("/ui/login")  # not signed in: sent to sign in
    screenshot(browser, "console-sign-in")
    browser.find_element(By.ID, "key").send_keys(key)
    browser.find_element(By.ID, "sign-in").click()
    _wait(browser, "#grants")
    assert browser.current_url.endswith("/ui/grants")
    rows = {r.get_attribute("data-grant"): r for r in browser.find_elements(By.CSS_SELECTOR, "tr.grant")}
    assert set(rows) == {"acme-1", "acme-2", "acme-3", "billing-eu", "billing-us"}
    assert rows["acme-2"].find_element(By.CSS_SELECTOR, ".state").text == "needs_reauth"
    assert "red" in rows["acme-2"].find_element(By.CSS_SELECTOR, ".dot").get_attribute("class")
    assert rows["acme-1"].find_element(By.CSS_SELECTOR, ".generation").text == "4"
    assert rows["acme-1"].find_element(By.CSS_SELECTOR, ".outcome").text == "committed"
    assert rows["acme-2"].find_element(By.CSS_SELECTOR, ".outcome").text == "revoked_or_expired"
    screenshot(browser, "console-grants")

    # Filter by state, as an operator looking for what broke would.
    browser.get(f"{server.url}/ui/grants?state=needs_reauth")
    assert _listed(browser) == ["acme-2"]

    _failing_grant(browser, cause)
    _refresh_and_revoke(browser, server.url)
    _other_pages(browser, server.url)


def _failing_grant(browser: WebDriver, cause: str) -> None:
    """The failing grant: the doctor's class and its evidence, for people."""
    browser.find_element(By.LINK_TEXT, "acme-2").click()
    assert _wait(browser, "#doctor-cause") == cause
    assert browser.find_element(By.ID, "doctor-facts").text and browser.find_element(By.ID, "doctor-summary").text
    history = browser.find_element(By.ID, "history").text
    assert cause in history and "400" in history  # the failed attempt: its class and the provider's HTTP status
    evidence_tables = browser.find_elements(By.CSS_SELECTOR, "table.evidence")
    assert evidence_tables  # the attempts it is about: workers, times
    worker_cells = [row.find_elements(By.TAG_NAME, "td")[1].text for t in evidence_tables
                    for row in t.find_elements(By.CSS_SELECTOR, "tbody tr")]  # fmt: skip
    assert worker_cells and all(":" in w for w in worker_cells)  # host:pid:suffix
    screenshot(browser, "console-grant-failing")


def _refresh_and_revoke(browser: WebDriver, url: str) -> None:
    """Refresh now on a healthy grant: the generation moves on. Revoke asks first."""
    browser.get(f"{url}/ui/grants/acme-1")
    before = int(_wait(browser, "#generation"))
    browser.find_element(By.ID, "refresh-now").click()
    assert "refreshed" in _wait(browser, "#done")
    assert int(browser.find_element(By.ID, "generation").text) == before + 1
    assert browser.find_elements(By.CSS_SELECTOR, "#lineage tr.current")[0].text.startswith(f"{before + 1} (current)")
    screenshot(browser, "console-grant")

    # Confirming removes the grant (here only: the simulator has no revocation endpoint).
    browser.get(f"{url}/ui/grants/acme-3")
    browser.find_element(By.ID, "revoke").click()
    _wait(browser, "#confirm-revoke")
    screenshot(browser, "console-revoke")
    browser.find_element(By.NAME, "local_only").click()
    browser.find_element(By.ID, "confirm-revoke").click()
    assert "acme-3 removed here only" in _wait(browser, "#done")
    assert "acme-3" not in _listed(browser)


def _other_pages(browser: WebDriver, url: str) -> None:
    for page in ("dashboard", "providers", "activity", "keys"):
        browser.get(f"{url}/ui/{page}")
        _wait(browser, "main h1")
        screenshot(browser, f"console-{page}")
    browser.get(f"{url}/ui/dashboard")
    assert len(browser.find_elements(By.CSS_SELECTOR, "svg.chart rect.ok")) >= 2  # committed refreshes, active
    assert len(browser.find_elements(By.CSS_SELECTOR, "svg.chart rect.bad")) >= 1  # the failure, needs_reauth

    # Sign out: back to the sign-in page, and the pages are closed.
    browser.find_element(By.CSS_SELECTOR, "form.signout button").click()
    _wait(browser, "#sign-in")
    browser.get(f"{url}/ui/grants")
    assert browser.current_url.endswith("/ui/login")
