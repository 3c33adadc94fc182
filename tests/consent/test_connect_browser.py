"""Where `connect` may open a browser, and what it says when it cannot.

On Linux without a display, Python's `webbrowser` would fall back to a console browser (lynx, w3m) that takes
over the terminal, or hang in a pipe: `connect` then only prints the URL. Over SSH the loopback redirect lands on
the machine the browser runs on, so the code flow says how to forward it or to use --device. Text that came from
the provider is cleaned of control characters before it reaches the terminal.
"""

from __future__ import annotations

import pytest

from grantkeeper._secrets import Secret
from grantkeeper.cli import connect as connect_cli
from grantkeeper.consent.device import DeviceAuthorization
from grantkeeper.consent.flow import AuthorizationRequest

REQUEST = AuthorizationRequest(
    provider="p", url="https://as.example/authorize?client_id=c&state=s", redirect_uri="http://127.0.0.1:43123/callback",
    state="s", verifier=Secret("v" * 64), scopes=(),
)  # fmt: skip


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []

    def record(url: str) -> bool:
        calls.append(url)
        return True

    monkeypatch.setattr("webbrowser.open", record)
    monkeypatch.setattr("sys.platform", "linux")
    for name in ("DISPLAY", "WAYLAND_DISPLAY", "BROWSER", "SSH_CONNECTION"):
        monkeypatch.delenv(name, raising=False)
    return calls


def test_no_display_means_no_browser_and_the_url_is_printed(opened: list[str], capsys: pytest.CaptureFixture[str]
                                                            ) -> None:  # fmt: skip
    connect_cli._browser_shower("g", no_browser=False, timeout=60)(REQUEST)
    assert opened == []
    err = capsys.readouterr().err
    assert f"Open this URL in a browser to connect grant g:\n\n    {REQUEST.url}\n" in err
    assert "ssh -L" not in err


@pytest.mark.parametrize("variable", ["DISPLAY", "WAYLAND_DISPLAY", "BROWSER"])
def test_a_graphical_session_or_an_explicit_browser_opens_it(
    opened: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], variable: str
) -> None:
    monkeypatch.setenv(variable, ":0" if variable != "BROWSER" else "firefox")
    connect_cli._browser_shower("g", no_browser=False, timeout=60)(REQUEST)
    assert opened == [REQUEST.url]
    assert "Opened the browser to connect grant g" in capsys.readouterr().err


def test_no_browser_wins_over_a_display(opened: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISPLAY", ":0")
    connect_cli._browser_shower("g", no_browser=True, timeout=60)(REQUEST)
    assert opened == []


def test_over_ssh_it_says_how_to_forward_the_redirect(opened: list[str], monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    monkeypatch.setenv("SSH_CONNECTION", "10.0.0.2 50000 10.0.0.1 22")
    connect_cli._browser_shower("g", no_browser=True, timeout=60)(REQUEST)
    err = capsys.readouterr().err
    assert "ssh -L 43123:127.0.0.1:43123" in err and "connect --device" in err


def test_provider_text_in_the_device_prompt_is_cleaned(opened: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """A user code or URL carrying terminal escapes is printed with them neutralised."""
    authorization = DeviceAuthorization(
        provider="p", device_code=Secret("device-code-value-1234"), user_code="ABCD\x1b[2J-EFGH",
        verification_uri="https://as.example/device\x1b]8;;https://evil.example\x07",
        verification_uri_complete="https://as.example/device?user_code=ABCD\r\n", expires_in=600, interval=5,
        scopes=(),
    )  # fmt: skip
    connect_cli._device_shower("g", no_browser=True, timeout=None)(authorization)
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\x07" not in err and "\r" not in err
    assert "code: ABCD?[2J-EFGH" in err
    assert "device-code-value" not in err
