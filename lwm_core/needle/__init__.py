"""Needle-in-a-haystack retrieval: datasets (`make`), their haystacks and tasks.

`config` (the settings and the --ctx/--depths parsers), `haystack` (text and built-in haystacks),
`tasks` (what each task hides and asks), `make` (fitting, placement and exact token accounting).
"""
