-- Our signature of a narinfo, made once when the narinfo is stored instead of on every hit
-- (the fingerprint it signs never changes), with the public key that made it: a narinfo is
-- served with it only while that is still the signing key, and signed afresh otherwise.
ALTER TABLE narinfos ADD COLUMN own_sig TEXT;
ALTER TABLE narinfos ADD COLUMN own_sig_key TEXT;
