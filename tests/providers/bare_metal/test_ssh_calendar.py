"""Our systemd calendar parser against the real ``systemd-analyze calendar`` of a test host:
same expressions accepted and refused, same normal form, same next elapse times (DST included).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from reconciler.errors import ProviderError
from reconciler.providers.bare_metal.systemd import on_calendar
from reconciler.spec.calendar import CalendarError, next_elapse, parse_calendar

# Accepted and refused by systemd 252 (the test hosts); "never" ones are accepted by systemd but
# never elapse, which we refuse at validate time (checked below). Not listed: "Sun *-03-25..31
# 02:00" in CET, a time that falls in the DST gap, where systemd 252 itself gives up ("Infinite
# loop in calendar calculation"); we skip that day, as for any other time in a gap.
EXPRESSIONS = [
    "Mon, 12:34", "Mon,Tue 10:00", "mon..fri 9:00", "Monday 10:00", "Mon-Fri 10:00",
    "Mon,Wed..Fri,Sun", "Sat,Sun 18:30", "*:0/5", "*:*:0/5", "*:*:0/2", "minutely", "hourly",
    "daily", "weekly", "monthly", "quarterly", "semiannually", "yearly", "annually", "HOURLY",
    "2026-12-25", "12-25", "27-12-25", "*-02-29 00:00", "*-*-31", "Sat *-*-1..7 18:00",
    "12:00:00.5", "*:*:0/0.5", "1..5:00", "*:00/15,7", "9..17/2:00", "*-1/2-1",
    "2020..2030/5-01-01", "*-*~1", "*-*~07/1", "Fri *-*~7/1", "*-*~1..3 12:00", "9:5", "1:2:3",
    "*:*:*", "2026-*-* *:*", "10:00 UTC", "10:00 utc", "Mon..Mon", "0:0..1:0/21",
    "*-*-* 02:30:00", "*-*-* *:30:00", "*-*-* 01..03:00/20:00", "Sun *-10-25..31 02:00",
    "@1800000000",
    # refused
    "", "*", "00:00:60", "24:00", "*-*-* 25:00", "*-13-01", "*-*-32", "*-*~29", "1969-01-01",
    "Tue..Mon", "Sat..Mon 10:00", "5..3:00", "*:*/5", "*/5 * * * *", "*:59/1", "*:0/0",
    "Mon..", "Funday 10:00", "Mondays", "10:00:00 1", "*-*-31/1 23:58:0/50", "Mon, Tue 10:00",
    "12:00 extra",
    # accepted by systemd, never elapse
    "*-02-30", "2199-02-30",
]
BASES = ["2026-03-28 23:00:00 UTC", "2026-10-24 23:00:00 UTC", "2026-11-26 11:45:17 UTC"]
# Central European time as a POSIX TZ rule: the test hosts have no zoneinfo files, glibc reads
# the rule itself. Expressions without a zone are evaluated in it, with its DST changes.
POSIX_TZ = "CET-1CEST,M3.5.0,M10.5.0/3"
PARIS = ZoneInfo("Europe/Paris")  # the same rules for these years
ITERATIONS = 4


def _systemd(host: Any, base: str) -> dict[str, dict[str, Any]]:
    script = ('for e; do printf "\\n@@%s\\n" "$e"; systemd-analyze calendar '
              f'--iterations={ITERATIONS} --base-time="$BASE" -- "$e" 2>&1; done')
    out = host.run(["env", f"TZ={POSIX_TZ}", f"BASE={base}", "sh", "-c", script, "-",
                    *EXPRESSIONS], timeout=60, check=False).stdout.decode()
    results: dict[str, dict[str, Any]] = {}
    for block in out.split("\n@@")[1:]:
        expr, _, body = block.partition("\n")
        if "Failed to parse" in body:
            results[expr] = {"ok": False}
            continue
        normalized = re.search(r"Normalized form: (.*)", body)
        assert normalized, body
        fires = [datetime.strptime(m, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
                 for m in re.findall(r"\(in UTC\): \w+ (\S+ \S+) UTC", body)]
        if not fires:  # printed in UTC already
            fires = [datetime.strptime(m, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
                     for m in re.findall(r"(?:Next elapse|Iter\. #\d+): \w+ (\S+ \S+) UTC",
                                         body)]
        results[expr] = {"ok": True, "normalized": normalized.group(1).strip(),
                         "never": "Next elapse: never" in body, "fires": fires}
    return results


@pytest.mark.timeout(120)
def test_parser_agrees_with_systemd_analyze(ssh_host: Any) -> None:
    for base_text in BASES:
        real = _systemd(ssh_host, base_text)
        assert set(real) == set(EXPRESSIONS), sorted(set(EXPRESSIONS) - set(real))
        base = datetime.strptime(base_text, "%Y-%m-%d %H:%M:%S UTC").replace(tzinfo=UTC)
        for expr, want in real.items():
            try:
                spec = parse_calendar(expr)
            except CalendarError as exc:
                assert not want["ok"], f"we refuse {expr!r} ({exc}), systemd accepts it"
                continue
            assert want["ok"], f"we accept {expr!r}, systemd refuses it"
            assert spec.normalized() == want["normalized"], expr
            fires = []
            at = base
            for _ in range(ITERATIONS):
                nxt = next_elapse(spec, at, PARIS)
                if nxt is None:
                    break
                fires.append(nxt.astimezone(UTC).replace(microsecond=0))
                at = nxt
            if want["never"]:
                assert fires == [], expr
            else:
                assert fires == want["fires"], (expr, base_text)


def test_on_calendar_for_a_calendar_schedule() -> None:
    assert on_calendar({"calendar": "Mon..Fri 09:00"}, "UTC") == ["Mon..Fri 09:00 UTC"]
    assert on_calendar({"calendar": " *:*:0/5 "}, "Europe/Paris") == ["*:*:0/5 Europe/Paris"]
    assert on_calendar({"calendar": "daily Europe/Paris"}, "UTC") == ["daily Europe/Paris"]
    assert on_calendar({"calendar": "hourly"}, None) == ["hourly"]
    with pytest.raises(ProviderError, match="hour 25"):
        on_calendar({"calendar": "25:00"})
    with pytest.raises(ProviderError, match=r"\{calendar: EXPR\}"):
        on_calendar("Mon..Fri 09:00")  # a string is cron, never guessed
