"""The contracts the parts share, declared once: the events and their envelope, the log
reader (with the relay's checkpoint), the broker topology and the read model's names."""
