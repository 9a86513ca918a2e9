"""Tools a person runs on the artifacts (through `facesem`): inspecting versioned stores.

May import: models, store, support; never stages/ or pipeline/.
"""
