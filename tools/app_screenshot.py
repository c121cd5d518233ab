"""The README's screenshot of `synfer app`: the bundled generator, the happiness class-mean preset, 4 faces.

    python tools/app_screenshot.py [--out docs/images/app.png] [--seed 0]

Needs the app extra and Debian's chromium + chromium-driver (as the browser test).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("docs/images/app.png"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from synfer.app.serve import serve_in_background

    work = Path(tempfile.mkdtemp(prefix="synfer-app-shot-"))
    proc, url = serve_in_background(work)
    os.environ.setdefault("SE_OFFLINE", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1180"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"),
                              options=options)
    try:
        driver.get(url)
        wait = WebDriverWait(driver, 120)
        css = lambda sel: driver.find_elements(By.CSS_SELECTOR, sel)  # noqa: E731
        wait.until(lambda d: css("#generate"))
        css("[data-testid='class mean-radio-label']")[0].click()
        time.sleep(1.0)
        seed = css("input[aria-label='number input for seed'], #component-seed input")
        if seed:
            seed[0].clear()
            seed[0].send_keys(str(args.seed))
        css("#generate")[0].click()
        wait.until(lambda d: len(css("#gallery img")) >= 4 and css("#au-chart img") and css("#probs"))
        time.sleep(1.0)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(args.out))
        print(f"wrote {args.out}")
    finally:
        driver.quit()
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
