"""Zhongkui: users, tokens and access control (issue 7, in progress).

Built so far: the pure cores -- scrypt passwords (``passwords``), signed tokens with a
rotating keyring (``tokens``), ACL decisions (``acl``), the audit trail with redaction
(``audit``) and the user directory over a state store (``directory``). Enforcement at the
platform's entry points comes next; see docs/zhongkui.md."""
