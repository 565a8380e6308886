"""The HTTP edge: the front door, the push route, the operators' API and pages, errors as
problem documents, inbound authentication. It may use every layer below it."""
