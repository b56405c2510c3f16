"""`[sources.carecloud]`: the CareCloud section's typed settings and credentials (see `pipelines/config.py`)."""

from typing import Optional

from dlt.common.configuration import configspec
from dlt.common.typing import TSecretStrValue

from pipelines.config import SourceConfiguration, SourceCredentials
from pipelines.windows import LOCAL_TIMEZONE


@configspec
class CareCloudCredentials(SourceCredentials):
    """`login`, `password`, `external_app_id` of an API user (`POST /users/actions/login`)."""

    login: str = None
    password: TSecretStrValue = None
    external_app_id: str = None


@configspec
class CareCloudConfiguration(SourceConfiguration):
    base_url: str = "https://sandbox.crmcarecloud.com/webservice/rest-api/enterprise-interface/v1.0"
    """The project's REST API (`https://<project>.crmcarecloud.com/webservice/rest-api/enterprise-interface/v1.0`);
    the default is the vendor's sandbox."""
    rate_limit: float = 50.0
    timezone: str = LOCAL_TIMEZONE
    """The CareCloud project's local time (IANA name): record times and `time_from`/`time_to` are in it."""
    page_size: int = 1000
    """`count` per page; CareCloud documents no maximum."""
    credentials: Optional[CareCloudCredentials] = None
