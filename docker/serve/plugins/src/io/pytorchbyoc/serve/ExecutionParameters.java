package io.pytorchbyoc.serve;

import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.util.Properties;
import org.pytorch.serve.servingsdk.Context;
import org.pytorch.serve.servingsdk.ModelServerEndpoint;
import org.pytorch.serve.servingsdk.annotations.Endpoint;
import org.pytorch.serve.servingsdk.annotations.helpers.EndpointTypes;
import org.pytorch.serve.servingsdk.http.Request;
import org.pytorch.serve.servingsdk.http.Response;

/**
 * GET /execution-parameters for Batch Transform: as many concurrent transforms
 * as there are workers, and the payload limit the server really enforces.
 */
@Endpoint(
        urlPattern = "execution-parameters",
        endpointType = EndpointTypes.INFERENCE,
        description = "Batch Transform execution parameters")
public class ExecutionParameters extends ModelServerEndpoint {

    @Override
    public void doGet(Request req, Response rsp, Context ctx) throws IOException {
        Properties config = ctx.getConfig();
        int workers = Integer.parseInt(config.getProperty("default_workers_per_model", "1"));
        long payloadBytes = Long.parseLong(config.getProperty("max_request_size", "6291456"));
        String body =
                String.format(
                        "{\"MaxConcurrentTransforms\": %d, \"BatchStrategy\": \"MULTI_RECORD\", \"MaxPayloadInMB\": %d}%n",
                        workers, payloadBytes / (1024 * 1024));
        rsp.setContentType("application/json");
        rsp.setStatus(200);
        rsp.getOutputStream().write(body.getBytes(StandardCharsets.UTF_8));
    }
}
