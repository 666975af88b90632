"""The k3s stand-in's Kubernetes API server (tests/doubles/k3s_standin.py runs it; against real k3s: RACKBOOT_K3S_BUNDLE=DIR).

Modules, one concern each:
  status      the API server's Status answers (ApiError, 422 Invalid causes, 409 apply conflicts)
  schema      decoding against the Kubernetes OpenAPI schemas of the k3s version (kubernetes-validate's)
  validation  what the API server's validation refuses: names, labels, required and immutable fields
  fields      server-side apply's per-manager field ownership (managedFields, FieldsV1)
  store       objects persisted as JSON, simulated controllers, namespace termination
  writes      create, update, merge patch and apply, in the API server's order

They use only the standard library: in a stand-in bundle they travel inside
the `k3s` executable (a zip application) with the schemas (schemas.json.gz).
"""
