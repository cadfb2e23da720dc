"""Benchmarks for sanic-chat: a load generator (:mod:`.load`), the floor server
it is compared with (:mod:`.floor`), and the scenarios that run them (:mod:`.run`)."""
