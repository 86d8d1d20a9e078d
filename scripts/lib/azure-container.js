// Creates a blob container in the Azure Blob storage emulator (Azurite) for one test:
// object_store reads and writes blobs but cannot create containers. The account and key are
// Azurite's documented development account.
//   NODE_PATH=<node_modules with @azure/storage-blob> node azure-container.js URL NAME
const { BlobServiceClient, StorageSharedKeyCredential } = require("@azure/storage-blob");

const [url, name] = process.argv.slice(2);
const account = "devstoreaccount1";
const key =
  "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
const service = new BlobServiceClient(`${url}/${account}`, new StorageSharedKeyCredential(account, key));
service
  .getContainerClient(name)
  .create()
  .catch((error) => {
    console.error(`cannot create container ${name}: ${error.message}`);
    process.exit(1);
  });
