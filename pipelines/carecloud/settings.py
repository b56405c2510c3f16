"""CareCloud API constants (see ../shared/api-notes.md §1)."""

LOGIN_PATH = "/users/actions/login"
POINT_HISTORY_PATH = "/point-history"
SORT_FIELD = "point_history_record_time"

POINT_HISTORY_TABLE = "carecloud_point_history"
CHILD_TABLE_PREFIX = POINT_HISTORY_TABLE + "__extended_data__"

# The documented fields of a point history record; their values as sent make up the record key. A field the vendor
# adds later is loaded as a column of its own but kept OUT of the key: otherwise every record re-fetched in the
# lookback after such a change would get a new key and be loaded twice.
KEY_FIELDS = ("customer_id", "point_amount", "point_operation_type", "point_operation_note", "point_type_id",
              "partner_id", "store_id", "point_history_record_time", "extended_data")
TEXT_FIELDS = ("point_operation_type", "point_operation_note", "point_type_id", "partner_id", "store_id")

# How often a customer-window is fetched again when the result set changed while paging.
MAX_PAGING_ATTEMPTS = 3

# Cross-customer listings (issue 17): path, the list key in `data`, and the time filter pair with the field it
# filters on (the vendor's names, ../shared/specs/carecloud-openapi.yaml getCustomers / getPoints / getPurchases).
CUSTOMERS_PATH = "/customers"
POINTS_PATH = "/points"
PURCHASES_PATH = "/purchases"
LISTINGS = {
    "points": (POINTS_PATH, "points", ("create_point_time_from", "create_point_time_to"), "created_at"),
    "purchases": (PURCHASES_PATH, "purchases", ("payment_time_from", "payment_time_to"), "payment_time"),
}
ROSTER_SORT_FIELD = "last_change"
POINTS_TABLE = "carecloud_points"          # raw, the vendor's field names, merge on point_id
PURCHASES_TABLE = "carecloud_purchases"    # raw, the vendor's field names, merge on purchase_id
CUSTOMERS_TABLE = "carecloud_customers"    # the roster: customer_id, state, last_change, first_seen
