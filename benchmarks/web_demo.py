"""The web demo in Debian's headless chromium: a web bundle's self-test, then a photo through its picker,
saved as a screenshot (docs/web_demo.png).

    hrvit-mobile bundle --app web --target tflite --out web-b1
    python3 benchmarks/web_demo.py web-b1 demo_app_assets/samples/synthetic_480x640.jpg docs/web_demo.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hrvit_mobile.bundle import verify_bundle
from hrvit_mobile.web_app import ChromiumPage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path, help="a web bundle folder")
    parser.add_argument("image", type=Path, help="the photo to segment")
    parser.add_argument("out", type=Path, help="the screenshot (.png)")
    parser.add_argument("--window", default="900x840", help="WIDTHxHEIGHT of the browser window")
    args = parser.parse_args()
    manifest = verify_bundle(args.bundle)
    width, height = (int(v) for v in args.window.split("x"))
    with ChromiumPage(args.bundle, window=(width, height)) as page:
        status, agreement, _ = page.self_test()
        legend = page.segment_photo(args.image)
        page.driver.save_screenshot(str(args.out))
    model = manifest["models"][0]
    print(f"{manifest['model']} {model['variant']} {manifest['img_size'][0]}x{manifest['img_size'][1]} in "
          f"chromium: self-test {status}, agreement {agreement:.6f}; {args.image.name}: {legend}")


if __name__ == "__main__":
    main()
