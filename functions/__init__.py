"""One blueprint per stage; each function only decodes, runs its stage and settles."""
