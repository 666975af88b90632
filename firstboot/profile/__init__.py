"""Rack profiles: YAML in, one frozen RackProfile per rack out.

The builder validates every profile with this package before doing any work,
and the first-boot agent reads the same profiles inside the image, so both
agree on what a rack is. One module per concern:

- model: the frozen dataclasses and enums everything downstream reads;
- yaml_input: each file as strict YAML (regular, small, UTF-8, string keys,
  no anchors or aliases, bounded depth);
- loading: merge over defaults.yaml, keeping which file each value came from,
  and the entry points below;
- schema: rack-profiles/schema.json, the only place defaults are declared;
- checks, labels, manifests: what the schema cannot say about one profile,
  run only on a document the schema accepted;
- cross: what racks given together must not share;
- construct: the model from a checked document;
- json_model: the model as JSON, for the agent to read without the YAML.

Every problem is a Problem (problems), shown as `FILE: PATH: MESSAGE`, where
FILE is the profile or the defaults file the offending value came from.
"""

from firstboot.profile.json_model import FORMAT_VERSION, from_json, to_json
from firstboot.profile.loading import DEFAULTS_NAME, load_one, load_profiles, profile_paths
from firstboot.profile.model import (BootDirBy, DhcpMode, Identify, Jumphost, K3s, KubeSecret, Labels, Migration,
                                     Netboot, Network, Pi, PiModel, RackProfile, RancherStorage,
                                     PullSecret, SecretImport)
from firstboot.profile.problems import Problem
from firstboot.profile.schema import SCHEMA_PATH

__all__ = ["FORMAT_VERSION", "from_json", "to_json", "DEFAULTS_NAME", "load_one", "load_profiles",
           "profile_paths", "BootDirBy", "DhcpMode", "Identify", "Jumphost", "K3s", "KubeSecret", "Labels",
           "Migration", "Netboot", "Network", "Pi", "PiModel", "RackProfile", "RancherStorage", "PullSecret", "SecretImport",
           "Problem", "SCHEMA_PATH"]
