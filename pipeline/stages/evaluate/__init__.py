"""``civt-pipe evaluate``: accuracy per head, and with ``--store`` the KL to each teacher."""
