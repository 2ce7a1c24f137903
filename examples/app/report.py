"""Demo Schedule: ask the api service how it is doing and print one line."""

import json
import os
import urllib.request

url = os.environ.get("API_URL", "http://127.0.0.1:18081/")
with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 (fixed loopback URL)
    body = json.load(resp)
print(f"report: {body['service']} says {body['greeting']!r}, up {body['uptime_s']}s")
