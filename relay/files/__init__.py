"""File sharing (contract v2, "Files"): uploads and downloads over the relay's HTTP port.

- relay.files.tokens: HttpTokens, the sessions' `httpToken`s (sans-IO);
- relay.files.blobs: the BlobStore Protocol, FileRecord, LocalBlobStore (a directory);
- relay.files.sniff: a content type from a file's first bytes;
- relay.files.names: a safe file name and its Content-Disposition;
- relay.files.ranges: one `Range: bytes=` request;
- relay.files.service: FileService, the `POST /files` and `GET /files/{fileId}` routes.
"""
