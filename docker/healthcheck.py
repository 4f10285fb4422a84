"""Docker HEALTHCHECK of the service image: exit 0 when /readyz answers 200, else 1.

Standard library only (the image has no curl); the port comes from RECALL_PORT.
"""

import os
import sys
import urllib.error
import urllib.request


def main() -> int:
    url = f"http://127.0.0.1:{os.environ.get('RECALL_PORT', '8000')}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError):
        return 1


if __name__ == "__main__":
    sys.exit(main())
