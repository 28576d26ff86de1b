"""Console fixtures: `keel api` in this event loop, a keel worker (document reviews) and a gate
harness worker on the dev server, and one headless Chromium per module (Debian's chromium and
chromedriver, paths given explicitly so Selenium never downloads a driver or a browser).

Selenium's calls block: ``Page`` runs each in a thread, so the API served from this event loop
keeps answering the browser meanwhile.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx2
import pytest
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait
from temporalio.client import Client, WorkflowHandle
from temporalio.worker import Worker

from activities.approvals import ApprovalActivities
from activities.audit_trail import AuditActivities
from api.server import running_api
from contracts.approvals import GateRequest
from infra.database import sessions_for
from infra.settings import KeelSettings
from llmsim import SimServer
from services.api_tokens import IssuedToken, TokenRole
from tests.api.tokens import issue_token
from tests.approvals.gate_harness import GateHarnessWorkflow, HarnessInput

CHROMIUM = Path(os.environ.get("KEEL_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("KEEL_TEST_CHROMEDRIVER", "/usr/bin/chromedriver"))
DESKTOP = (1280, 900)
PHONE = (375, 740)
T = TypeVar("T")


@pytest.fixture(scope="module")
def driver() -> Iterator[webdriver.Chrome]:
    """One headless Chromium for the module's tests (each test starts with no cookies)."""
    if not CHROMIUM.exists() or not CHROMEDRIVER.exists():
        pytest.fail(
            f"the console's browser tests need {CHROMIUM} and {CHROMEDRIVER}: "
            "apt-get install -y chromium chromium-driver (.ci/run does)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--disable-extensions",
        "--no-first-run",
        f"--window-size={DESKTOP[0]},{DESKTOP[1]}",
    ):
        options.add_argument(flag)
    browser = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    browser.set_page_load_timeout(30)
    try:
        yield browser
    finally:
        browser.quit()


class Page:
    """The browser, driven from async tests: every Selenium call runs in a worker thread."""

    def __init__(self, driver: webdriver.Chrome, base_url: str) -> None:
        self.driver = driver
        self.base_url = base_url

    async def run(self, action: Callable[[webdriver.Chrome], T]) -> T:
        return await asyncio.to_thread(action, self.driver)

    async def open(self, path: str) -> None:
        await self.run(lambda d: d.get(self.base_url + path))

    async def find(self, css: str) -> WebElement:
        return await self.run(lambda d: d.find_element(By.CSS_SELECTOR, css))

    async def all(self, css: str) -> list[WebElement]:
        return await self.run(lambda d: d.find_elements(By.CSS_SELECTOR, css))

    async def text(self, css: str) -> str:
        return await self.run(lambda d: d.find_element(By.CSS_SELECTOR, css).text)

    async def texts(self, css: str) -> list[str]:
        return await self.run(lambda d: [e.text for e in d.find_elements(By.CSS_SELECTOR, css)])

    async def attributes(self, css: str, name: str) -> list[str]:
        return await self.run(
            lambda d: [e.get_attribute(name) or "" for e in d.find_elements(By.CSS_SELECTOR, css)]
        )

    async def hidden_text(self, css: str) -> str:
        """An element's textContent, shown or not (a visually hidden live region)."""
        return await self.run(
            lambda d: d.find_element(By.CSS_SELECTOR, css).get_attribute("textContent") or ""
        )

    async def fill(self, css: str, value: str) -> None:
        def fill(d: webdriver.Chrome) -> None:
            field = d.find_element(By.CSS_SELECTOR, css)
            field.clear()
            field.send_keys(value)

        await self.run(fill)

    async def click(self, css: str) -> None:
        await self.run(lambda d: d.find_element(By.CSS_SELECTOR, css).click())

    async def wait_for(
        self, condition: Callable[[webdriver.Chrome], Any], timeout: float = 20, what: str = ""
    ) -> Any:
        def wait(d: webdriver.Chrome) -> Any:
            try:
                return WebDriverWait(d, timeout, poll_frequency=0.1).until(condition)
            except TimeoutException:
                raise AssertionError(
                    f"timed out after {timeout}s waiting for {what or condition}; page "
                    f"{d.current_url}:\n{d.find_element(By.TAG_NAME, 'body').text[:2000]}"
                ) from None

        return await self.run(wait)

    async def path(self) -> str:
        url: str = await self.run(lambda d: d.current_url)
        return url.removeprefix(self.base_url)

    async def script(self, source: str, *arguments: object) -> Any:
        return await self.run(lambda d: d.execute_script(source, *arguments))

    async def screenshot(self, name: str, tmp_path: Path) -> Path:
        """Written beside the test's files; also into KEEL_CONSOLE_SCREENSHOTS when set (how
        docs/console-*.png were made)."""
        target = tmp_path / f"{name}.png"
        await self.run(lambda d: d.save_screenshot(str(target)))
        assert target.stat().st_size > 1000
        keep = os.environ.get("KEEL_CONSOLE_SCREENSHOTS")
        if keep:
            shutil.copy(target, Path(keep) / target.name)
        return target

    async def sign_in(self, token: IssuedToken) -> None:
        await self.open("/console/sign-in")
        await self.fill("#token", token.secret)
        await self.click("form[action='/console/sign-in'] button[type=submit]")
        await self.wait_for(lambda d: "/console/queue" in d.current_url, what="the queue")

    async def cookie(self, name: str) -> dict[str, Any]:
        found: dict[str, Any] | None = await self.run(lambda d: d.get_cookie(name))
        assert found is not None, f"no {name} cookie"
        return found


@dataclass
class ConsoleRig:
    url: str
    client: Client
    settings: KeelSettings
    harness_queue: str

    async def open_gates(self, *gates: GateRequest, tenant: str = "acme") -> WorkflowHandle:
        """A bare workflow that opens ``gates`` in order (no LLM calls): for queue views."""
        return await self.client.start_workflow(
            GateHarnessWorkflow.run,
            HarnessInput(gates=[g.model_copy(update={"tenant": tenant}) for g in gates]),
            id=f"gates-{uuid.uuid4().hex[:10]}",
            task_queue=self.harness_queue,
        )

    def http(self, **cookies: str) -> httpx2.AsyncClient:
        return httpx2.AsyncClient(
            base_url=self.url, cookies=cookies, timeout=30, follow_redirects=False
        )


@pytest.fixture
async def console(
    client: Client, keel_settings: KeelSettings, interactive_worker: Worker, simulator: SimServer
) -> AsyncIterator[ConsoleRig]:
    queue = f"console-gates-{uuid.uuid4().hex[:8]}"
    sessions = sessions_for(keel_settings)
    async with (
        Worker(
            client,
            task_queue=queue,
            workflows=[GateHarnessWorkflow],
            activities=[
                *ApprovalActivities(keel_settings, sessions).all(),
                AuditActivities(sessions).record_audit_event,
            ],
        ),
        running_api(keel_settings, client) as url,
    ):
        yield ConsoleRig(url, client, keel_settings, queue)


@pytest.fixture
def page(driver: webdriver.Chrome, console: ConsoleRig) -> Iterator[Page]:
    driver.set_window_size(*DESKTOP)
    yield Page(driver, console.url)
    driver.delete_all_cookies()


async def reviewer_token(
    name: str, tenant: str = "acme", expires_in: timedelta | None = None
) -> IssuedToken:
    return await issue_token(
        tenant=tenant, role=TokenRole.REVIEWER, reviewer=name, expires_in=expires_in
    )
