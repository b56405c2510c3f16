"""Capillary API constants (see ../shared/api-notes.md §2)."""

TRANSFER_PATH = "/v2/points/transfer"
OAUTH_PATH = "/v3/oauth/token/generate"
NOT_FOUND_CODES = frozenset({8015, 8065})  # not found for the identifiers / not found in that source

TRANSFERS_TABLE = "capillary_points_transfers"
PARTIES_TABLE = "capillary_transfer_parties"
CUSTOMER_TRANSFERS_TABLE = "capillary_customer_transfers"
