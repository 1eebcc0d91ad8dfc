"""The page of serve.py in a real browser: headless Debian Chromium driven by Selenium.

Used by tests/test_serve.py (the browser test) and benchmarks/serve_screenshot.py (the README's picture).
"""

from __future__ import annotations

from pathlib import Path

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
# Without the background-networking flags Chromium keeps trying to reach Google's hosts from a closed network.
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1000,760")


def chromium():
    """``(driver, None)``, or ``(None, why)`` when no browser can start here."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        return None, "selenium is not installed (pip install -e '.[dev]')"
    if not CHROMIUM.exists() or not CHROMEDRIVER.exists():
        return None, "Debian's chromium and chromium-driver are missing (apt-get install chromium chromium-driver)"
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    try:
        return webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER))), None
    except Exception as error:  # WebDriverException and OS errors alike: the browser cannot start here
        return None, f"Chromium could not start: {str(error).strip().splitlines()[0]}"


def ask_page(browser, url: str, statements: list[str]) -> list[dict]:
    """Types ``statements`` into the page at ``url``, submits, and reads back each result as shown:
    ``{"label", "tokens": [(word, contribution, css classes)]}``."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(url)
    browser.find_element(By.ID, "statements").send_keys("\n".join(statements))
    browser.find_element(By.ID, "submit").click()
    shown = lambda page: len(page.find_elements(By.CSS_SELECTOR, ".result")) == len(statements)  # noqa: E731
    WebDriverWait(browser, 30).until(shown)
    return [{"label": result.find_element(By.CSS_SELECTOR, ".label").text,
             "tokens": [(token.text, float(token.get_attribute("data-contribution")), token.get_attribute("class"))
                        for token in result.find_elements(By.CSS_SELECTOR, ".token")]}
            for result in browser.find_elements(By.CSS_SELECTOR, ".result")]  # fmt: skip
