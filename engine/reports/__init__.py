"""Reports: what each campaign did, as text, JSON and HTML."""
