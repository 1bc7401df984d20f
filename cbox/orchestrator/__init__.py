"""Running tasks: containers, the event store and the parsers of agent output."""
