"""The ground floor every package stands on, importing none of them: the one error tree
(``errors``), cluster records and discovery (``cluster``), the one boundary to Ray's calls
(``actors``: Ray is imported only when a call is made), named limits shared by layers
(``limits``), the metrics registry and event log every component reports to (``metrics``,
``events``), named disk fault points for tests (``faults``) and the record format of the Nuwa
WAL and the Pangu journal (``logfile``)."""
