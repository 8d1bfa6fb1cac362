"""The web console in a real browser (headless Chromium): sign-in, a
change through a form, keyboard use and labelled controls, sign-out."""

from __future__ import annotations

from typing import Any

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from cbr.v1 import iam_pb2, vault_pb2
from tests.browser.conftest import BrowserFactory
from tests.support.processes import ControllerProcess

pytestmark = pytest.mark.integration

PASSWORD = "correct horse battery staple"
WAIT = 30


def make_user(controller: ControllerProcess, name: str, *grants: str) -> str:
    admin = controller.client()
    user = admin.iam.CreateUser(iam_pb2.CreateUserRequest(name=name)).user
    for grant in grants:
        admin.iam.CreateGrant(iam_pb2.CreateGrantRequest(user_id=user.id, action=grant))
    admin.iam.SetUserPassword(iam_pb2.SetUserPasswordRequest(user_id=user.id,
                                                             password=PASSWORD))
    return str(user.id)


def sign_in(browser: Any, controller: ControllerProcess, user: str) -> None:
    browser.get(controller.console_url + "/sign-in")
    browser.find_element(By.ID, "account").send_keys("admin")
    browser.find_element(By.ID, "user").send_keys(user)
    password = browser.find_element(By.ID, "password")
    password.send_keys(PASSWORD)
    password.send_keys(Keys.ENTER)  # the keyboard submits the form
    WebDriverWait(browser, WAIT).until(ec.presence_of_element_located((By.CSS_SELECTOR,
                                                                      "form.signout")))


def unlabelled_controls(browser: Any) -> list[str]:
    """Form controls a screen reader could not name."""
    return list(browser.execute_script("""
        return Array.from(document.querySelectorAll(
            'input:not([type=hidden]), select, textarea, button'))
          .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')
                       && !(e.tagName === 'BUTTON' && e.textContent.trim()))
          .map(e => e.outerHTML.slice(0, 120));"""))


def test_sign_in_create_a_vault_by_keyboard_and_sign_out(
        controller: ControllerProcess, open_browser: BrowserFactory) -> None:
    make_user(controller, "ops", "CBRFullAccess")
    browser: Any = open_browser(controller)
    browser.get(controller.console_url + "/")
    assert browser.current_url.startswith(controller.console_url + "/sign-in")
    assert unlabelled_controls(browser) == []
    sign_in(browser, controller, "ops")
    browser.get(controller.console_url + "/vaults")
    assert unlabelled_controls(browser) == []
    name = browser.find_element(By.ID, "v-name")
    name.send_keys("bad/name")  # refused by the API's name rule: shown, not a crash
    name.send_keys(Keys.ENTER)
    alert = WebDriverWait(browser, WAIT).until(
        ec.visibility_of_element_located((By.CSS_SELECTOR, "#create-msg [role=alert]")))
    assert "name" in alert.text.lower()
    name = browser.find_element(By.ID, "v-name")
    name.clear()
    name.send_keys("disks")
    name.send_keys(Keys.ENTER)
    WebDriverWait(browser, WAIT).until(
        ec.presence_of_element_located((By.LINK_TEXT, "disks")))
    vaults = controller.client().vaults.ListVaults(vault_pb2.ListVaultsRequest()).vaults
    assert [v.name for v in vaults] == ["disks"]
    browser.find_element(By.CSS_SELECTOR, "form.signout button").click()
    WebDriverWait(browser, WAIT).until(ec.url_contains("/sign-in"))
    browser.get(controller.console_url + "/vaults")
    assert "/sign-in" in browser.current_url
    assert browser.get_cookies() == []


FOCUSABLE = ("a[href], input:not([type=hidden]), select, textarea, "
             "button:not([disabled]), [tabindex]:not([tabindex='-1'])")


def test_every_link_and_control_of_a_page_is_reached_with_tab(
        controller: ControllerProcess, open_browser: BrowserFactory) -> None:
    make_user(controller, "ops", "CBRFullAccess")
    browser: Any = open_browser(controller)
    sign_in(browser, controller, "ops")
    browser.get(controller.console_url + "/vaults")
    browser.execute_script(
        "document.querySelectorAll(arguments[0]).forEach((e, i) => e.dataset.tabProbe = i)",
        FOCUSABLE)
    wanted = browser.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0]))"
        ".filter(e => e.offsetParent !== null).map(e => e.dataset.tabProbe)", FOCUSABLE)
    reached = []
    for _ in range(len(wanted) + 3):
        browser.switch_to.active_element.send_keys(Keys.TAB)
        reached.append(browser.execute_script(
            "return document.activeElement.dataset.tabProbe || null"))
    assert set(wanted) <= set(reached), "not reached by Tab: " + ", ".join(
        sorted(set(wanted) - set(reached)))
