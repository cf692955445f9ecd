// Example function: logs every reading hotter than 30 °C.
//
// Attach it to the change stream with `npm start -- --functions-dir functions/examples`. The event is exactly what
// Lambda delivers for a DynamoDB stream: a batch of records whose NewImage is in
// DynamoDB's typed JSON, so a temperature of 31.5 arrives as { "N": "31.5" }.
// Whatever console.log prints shows up in the function's logs.

const THRESHOLD = 30;

export async function handler(event) {
  for (const record of event.Records) {
    // REMOVE records (deletes, retention) have no NewImage; only new and changed readings count.
    if (record.eventName !== 'INSERT' && record.eventName !== 'MODIFY') continue;

    const temp = Number(record.dynamodb.NewImage?.temp?.N);
    if (temp > THRESHOLD) {
      const deviceId = record.dynamodb.Keys.deviceId.S;
      // Keys are the item key (deviceId, tsSeq); ts and seq are plain attributes of the images.
      const at = new Date(Number(record.dynamodb.NewImage.ts.N)).toISOString();
      console.log(`high temperature: ${deviceId} reported ${temp} at ${at}`);
    }
  }
  return { processed: event.Records.length };
}
