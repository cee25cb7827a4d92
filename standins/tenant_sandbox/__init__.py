"""A local Microsoft 365 tenant: Graph v1.0 and Exchange InvokeCommand subsets over one directory model.

Seed format: see model.py's docstring and demo_tenant.json.
"""

from standins.tenant_sandbox.knobs import Knobs, ScriptedFault
from standins.tenant_sandbox.model import Directory, TenantSeed
from standins.tenant_sandbox.server import TenantSandbox

__all__ = ["Directory", "Knobs", "ScriptedFault", "TenantSandbox", "TenantSeed"]
