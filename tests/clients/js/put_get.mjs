// The AWS SDK for JavaScript v3 as a client: a streamed PutObject (aws-chunked body with a
// trailing CRC32 checksum, even over plain HTTP), then a GET; prints what came back as JSON.
// usage: node put_get.mjs ENDPOINT ACCESS_KEY SECRET_KEY BUCKET KEY FILE OUT
import { S3Client, PutObjectCommand, GetObjectCommand } from "@aws-sdk/client-s3";
import { createReadStream, statSync, writeFileSync } from "node:fs";

const [endpoint, accessKeyId, secretAccessKey, bucket, key, file, out] = process.argv.slice(2);
const s3 = new S3Client({ endpoint, region: "us-east-1", forcePathStyle: true, credentials: { accessKeyId, secretAccessKey } });
const put = await s3.send(new PutObjectCommand({
  Bucket: bucket, Key: key, Body: createReadStream(file), ContentLength: statSync(file).size, ChecksumAlgorithm: "CRC32",
}));
const got = await s3.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
writeFileSync(out, Buffer.from(await got.Body.transformToByteArray()));
console.log(JSON.stringify({ etag: put.ETag, crc32: put.ChecksumCRC32, getEtag: got.ETag }));
