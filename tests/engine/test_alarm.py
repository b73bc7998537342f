"""The alarm that wakes workers and relays when a retry falls due."""

from __future__ import annotations

import asyncio

from agentmill.engine.alarm import Alarm


async def test_an_alarm_rings_after_its_delay_and_forgets_the_timer() -> None:
    alarm = Alarm()
    alarm.set_after(0.05)
    assert not alarm.is_set()

    await asyncio.wait_for(alarm.wait(), timeout=5)

    assert alarm._timers == set()  # fired timers are not kept for the life of the process


async def test_no_delay_rings_at_once_and_pending_timers_can_be_cancelled() -> None:
    alarm = Alarm()
    alarm.set_after(0)
    assert alarm.is_set()
    alarm.clear()
    alarm.set_after(0.05)
    alarm.cancel_pending()
    await asyncio.sleep(0.1)
    assert not alarm.is_set()
