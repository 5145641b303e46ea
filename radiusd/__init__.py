"""The RADIUS wire layer of Prepaid AAA: listeners, NAS trust, codec, reply cache, translation."""
