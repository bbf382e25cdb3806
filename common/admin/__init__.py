"""The HTTP admin every daemon serves: /healthz, /readyz, /status, /metrics, /route/<name>.

`status` builds the /status document (its keys are the contract readers rely on),
`prometheus` renders the same readings in the Prometheus text format, `routes` maps the
paths to a role's `routes.AdminSource`, and `server` serves them with
`common.httpserver`. docs/admin.md describes the endpoints.
"""
