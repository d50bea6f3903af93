"""The table of options: every setting of every verb and service, declared once."""
