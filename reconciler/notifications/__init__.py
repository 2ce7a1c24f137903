"""Notifications: what happened to the fleet, told where people look (chat, email, webhooks).

``events`` (what is told), ``destinations`` (where: Notifier resources and the operator's
``--notify`` URLs), ``digest`` (one summary per destination per pass, repeats held back,
recoveries once), ``delivery`` (a bounded queue per destination, retries, the state file that
survives a restart), ``sink`` (the narrow interface the daemon calls). Every service is spoken to
through Apprise. Not ``daemon/notify.py``: that one is systemd's sd_notify.
"""
