"""Where executions are kept (memory, Firestore) and how messages travel (in-process,
Pub/Sub), each behind one Protocol. They import only the shared ground."""
