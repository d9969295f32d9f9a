"""The only places with argv, HTTP, terminals and clocks."""
