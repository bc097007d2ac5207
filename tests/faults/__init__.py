"""The fault suite: the client against servers that fail or misbehave on purpose."""
