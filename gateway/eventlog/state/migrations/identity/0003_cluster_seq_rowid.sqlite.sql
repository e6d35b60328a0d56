-- An identity.sqlite of 0.4.0: its members keep the order they joined in.
UPDATE cluster SET seq = rowid;
