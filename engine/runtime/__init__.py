"""The runtime over the store: friend state, events, simulation and rule tests."""
