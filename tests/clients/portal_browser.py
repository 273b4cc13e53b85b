"""The sign-in portal in a real browser (headless chromium driven by selenium), against a
real OIDC provider (npm oidc-provider, its interactive login), then the token it gives
used by PyCap and redcaplite, revoked on the page, and refused afterwards.

Usage: python3 portal_browser.py GATEWAY_URL IDP_URL SCREENSHOT_DIR
A screenshot of each page goes to SCREENSHOT_DIR. Last, with plain HTTP: a code the IdP
issued to another client is refused by the gateway's callback.
"""
import base64
import hashlib
import os
import re
import secrets
import sys
import urllib.parse

import requests
from redcap import Project
from redcaplite import RedcapClient
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

gateway, idp, shots = sys.argv[1], sys.argv[2], sys.argv[3]
api = f"{gateway}/p/demo/api/"
os.makedirs(shots, exist_ok=True)


def check(name, cond, detail=""):
    print(f"{'ok' if cond else 'FAIL'}: {name} {detail}")
    if not cond:
        sys.exit(1)


options = webdriver.ChromeOptions()
options.binary_location = "/usr/bin/chromium"
for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=412,915"):
    options.add_argument(arg)
driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
wait = WebDriverWait(driver, 20)
step = [0]


def shot(name):
    step[0] += 1
    path = os.path.join(shots, f"{step[0]:02d}-{name}.png")
    # The whole page, not only the phone-sized window.
    height = driver.execute_script("return document.body.scrollHeight")
    driver.set_window_size(412, max(915, height + 40))
    driver.save_screenshot(path)
    driver.set_window_size(412, 915)


try:
    driver.get(f"{gateway}/portal/")
    check("the sign-in page", "Sign in" in driver.title, driver.title)
    shot("signin")
    driver.find_element(By.LINK_TEXT, "Sign in with single sign-on").click()

    # oidc-provider's own login page, then its consent page.
    wait.until(EC.presence_of_element_located((By.NAME, "login")))
    check("at the IdP", driver.current_url.startswith(idp), driver.current_url)
    driver.find_element(By.NAME, "login").send_keys("ana")
    driver.find_element(By.NAME, "password").send_keys("any-password")
    shot("idp-login")
    driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait.until(lambda d: d.current_url.startswith(gateway) or d.find_elements(By.CSS_SELECTOR, "button[type=submit]"))
    if not driver.current_url.startswith(gateway):
        shot("idp-consent")
        driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait.until(lambda d: d.current_url.startswith(gateway))

    body = driver.find_element(By.TAG_NAME, "body").text
    check("signed in as the IdP's user", "Signed in as ana" in body, body[:200])
    check("the projects page lists demo", "demo" in body and "Full Data Set" in body)
    shot("projects")
    driver.find_element(By.LINK_TEXT, "Tokens for demo").click()
    wait.until(EC.presence_of_element_located((By.ID, "note")))
    check("the project page shows the rights", "What you may do" in driver.page_source)
    shot("project")

    driver.find_element(By.ID, "note").send_keys("selenium laptop")
    driver.find_element(By.CSS_SELECTOR, "form.create button[type=submit]").click()
    wait.until(EC.presence_of_element_located((By.ID, "new-token")))
    token = driver.find_element(By.ID, "new-token").text.strip()
    check("a token on the page", re.fullmatch(r"[0-9A-F]{32}", token) is not None, token[:4] + "...")
    snippet = driver.find_element(By.ID, "snippet-pycap").text
    check("a PyCap snippet with this gateway's URL", api in snippet and token in snippet)
    shot("token-created")

    # The token through the gateway, with unmodified clients.
    records = Project(api, token).export_records()
    check("PyCap with the portal's token", len(records) == 3, str(records)[:60])
    records = RedcapClient(api, token).export_records()
    check("redcaplite with the portal's token", len(records) == 3, str(records)[:60])

    driver.get(f"{gateway}/portal/p/demo")
    rows = driver.find_elements(By.CSS_SELECTOR, "tbody tr")
    check("one token listed", len(rows) == 1, str(len(rows)))
    check("its last use is shown", "not seen" not in rows[0].text, rows[0].text)
    check("the token itself is not shown again", token not in driver.page_source)
    shot("tokens")
    rows[0].find_element(By.CSS_SELECTOR, "button.danger").click()
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "p.notice")))
    check("revoked on the page", "revoked" in driver.find_element(By.CSS_SELECTOR, "p.notice").text)
    shot("revoked")

    try:
        Project(api, token).export_records()
        check("PyCap with the revoked token fails", False)
    except Exception as e:
        check("PyCap with the revoked token fails", True, type(e).__name__)
    try:
        RedcapClient(api, token).export_records()
        check("redcaplite with the revoked token fails", False)
    except Exception as e:
        check("redcaplite with the revoked token fails", True, type(e).__name__)

    driver.find_element(By.CSS_SELECTOR, "form.signout button").click()
    wait.until(EC.presence_of_element_located((By.LINK_TEXT, "Sign in with single sign-on")))
    shot("signed-out")
    driver.get(f"{gateway}/portal/p/demo")
    check("signed out: the project page asks to sign in", "Sign in to see this project" in driver.page_source)
    shot("refused-after-sign-out")
except Exception:
    driver.save_screenshot(os.path.join(shots, "failure.png"))
    print("at", driver.current_url, re.sub(r"\s+", " ", driver.find_element(By.TAG_NAME, "body").text)[:600])
    raise
finally:
    driver.quit()


# A code the IdP issued to another client ("other"), delivered with a genuine sign-in's
# state in this browser: the gateway exchanges it as "portal" and the IdP refuses.
s = requests.Session()
r = s.get(f"{gateway}/portal/login", allow_redirects=False)
check("a sign-in starts", r.status_code == 303)
mine = urllib.parse.urlparse(r.headers["location"])
q = dict(urllib.parse.parse_qsl(mine.query))
verifier = secrets.token_urlsafe(48)
challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
other = {
    "client_id": "other", "response_type": "code", "scope": "openid profile",
    "redirect_uri": q["redirect_uri"], "state": q["state"], "nonce": q["nonce"],
    "code_challenge": challenge, "code_challenge_method": "S256",
}
url = f"{idp}{mine.path}?" + urllib.parse.urlencode(other)
for _ in range(12):
    r = s.get(url, allow_redirects=False)
    if r.status_code == 200:
        # The IdP's login form, then its consent form.
        action = re.search(r'action="([^"]+)"', r.text)
        check("an IdP form", action is not None, r.text[:200])
        data = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', r.text))
        if 'name="login"' in r.text:
            data.update(login="ana", password="x")
        r = s.post(urllib.parse.urljoin(url, action.group(1)), data=data, allow_redirects=False)
    loc = r.headers.get("location")
    check("the IdP redirects", loc is not None, f"{r.status_code} {r.text[:200]}")
    url = urllib.parse.urljoin(url, loc)
    if url.startswith(gateway):
        break
check("the IdP answers with a code for client other", "code=" in url, url[:80])
r = s.get(url, allow_redirects=False)
check("the gateway refuses another client's code", r.status_code == 401, f"{r.status_code}")
check("it says why", "refused the code" in r.text, re.sub(r"\s+", " ", r.text)[-300:])
check("and leaves no session", not any(c.name.endswith("rgw-session") for c in s.cookies))
print("portal browser: all checks passed")
