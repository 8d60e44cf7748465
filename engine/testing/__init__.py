"""Testing support: the LINE API emulator and the pytest plugin."""
