"""linerules: declarative marketing automation for LINE Official Accounts."""

__version__ = "0.1.0"
