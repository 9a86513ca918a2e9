"""What stages share: the params schema, stage arguments, the device switch, data-parallel
helpers, loading the trained networks (generator, decomposer, oracle), edits, figures, the
Inception features for FID/PPL and the HTML report builder.

May import: models, store; never stages/, pipeline/ or tools/.
"""
