"""Schemathesis hooks for e2e/tests/openapi.rs (loaded through SCHEMATHESIS_HOOKS).

What a JSON schema cannot say, a positive case is made to satisfy here, and only that: names
that must refer to a registered tenant (an owner, an operator, a client's tenant) become the
tenants the test registered, an IoT tenant gets its operator and any other type drops it,
applications are provisioned to the registered IoT tenant, minValue/maxValue are put in order,
a JSON number with more than 28 decimal places (5e-324: no exact decimal holds it) is
rounded to 28, and an Idempotency-Key is fresh (a key already used with another body is
refused). Negative cases are sent exactly as generated.
"""

import os
import uuid
from decimal import Decimal, InvalidOperation

import schemathesis

OWNER = os.environ.get("UTS_ST_OWNER", "st-provider")
OPERATOR = os.environ.get("UTS_ST_OPERATOR", "st-operator")

IOT = os.environ.get("UTS_ST_IOT", "st-plant")

OWNED = {"POST /admin/rules", "PUT /admin/rules/{ruleId}", "POST /admin/kpis", "PUT /admin/kpis/{kpiId}"}


def _decimal(value):
    try:
        return Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None


def _exact(value):
    """A float as a JSON number an exact decimal of at most 28 places can hold."""
    if not isinstance(value, float):
        return value
    exact = Decimal(repr(value))
    if exact.as_tuple().exponent >= -28:
        return value
    return float(exact.quantize(Decimal("1e-28")).normalize()) if abs(exact) >= Decimal("1e-28") else 0


def _usages(body):
    """The usage objects of a POST /usagesJobs or POST /usages body."""

    def items(container, key):
        value = container.get(key) if isinstance(container, dict) else None
        return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []

    for user in items(body, "users"):
        for resource in items(user, "resources"):
            yield from items(resource, "usages")
    for entry in items(body, "UTSUsageData"):
        yield from items(entry, "UsageData")


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    meta = getattr(case, "meta", None)
    if meta is None or not meta.generation.mode.is_positive:
        return
    label = f"{case.operation.method.upper()} {case.operation.path}"
    if case.headers and "Idempotency-Key" in case.headers:
        # A key already used with another body is refused (400): each positive case its own.
        case.headers["Idempotency-Key"] = str(uuid.uuid4())
    if label.endswith(" /admin/tenants/{tenantId}/applications/{application}"):
        case.path_parameters["tenantId"] = IOT
    if label == "PUT /admin/tenants/{tenantId}" and case.path_parameters.get("tenantId") in (OWNER, OPERATOR, IOT):
        # The registered tenants keep their types: the other hooks rely on them.
        case.path_parameters["tenantId"] = "st-other"
    if not isinstance(case.body, dict):
        return
    body = case.body
    for key in ("minValue", "maxValue", "unitConversionFactor"):
        if key in body:
            body[key] = _exact(body[key])
    for usage in _usages(body):
        for key in ("value", "usage"):
            if key in usage:
                usage[key] = _exact(usage[key])
    if label in OWNED and isinstance(body.get("ownerTenantId"), str):
        body["ownerTenantId"] = OWNER
    if label == "POST /admin/clients" and isinstance(body.get("tenantId"), str):
        body["tenantId"] = OWNER
    if label == "PUT /admin/tenants/{tenantId}":
        if body.get("tenantType") == "iot":
            body["operatorTenantId"] = OPERATOR
        else:
            body.pop("operatorTenantId", None)
    if label in OWNED and "minValue" in body and "maxValue" in body:
        low, high = _decimal(body["minValue"]), _decimal(body["maxValue"])
        if low is not None and high is not None and low > high:
            body["minValue"], body["maxValue"] = body["maxValue"], body["minValue"]
