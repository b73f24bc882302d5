"""Names of the federated components: the keys of SharedModels' submodules, state-dict prefixes, checkpoint
entries and per-component aggregation rules all use these."""

GENERATOR = "generator"
MSA = "msa"
SHARED_COMPONENTS = (GENERATOR, MSA)
