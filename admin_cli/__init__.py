"""``prepaidctl``: the operator's command line for Prepaid AAA (NAS clients, rates, cards,
bind numbers, live sessions, reports), built on the same billing services as the server."""
