// The local cluster's Iceberg REST catalog: Apache Iceberg's own REST servlet (RESTCatalogServlet
// over RESTCatalogAdapter, from iceberg-core's test jar, the classes RESTCatalogServer serves) on
// a Jetty connector bound to one host (127.0.0.1). RESTCatalogServer itself binds every address and
// has no host option, hence this launcher.
//
//   java -cp 'classes:libs/*' dev.formetl.cluster.LocalRestCatalog FILE.properties
//
// FILE.properties holds `rest.host`, `rest.port`, `catalog.name` and the backend catalog's
// properties (`uri`, `warehouse`, `io-impl`, `s3.*`, ...), passed to CatalogUtil as they are.
// Compiled by tests/cluster/install.sh with javac; started by tests/cluster/up.sh.
package dev.formetl.cluster;

import java.io.IOException;
import java.io.Reader;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Map;
import java.util.Properties;
import java.util.TreeMap;
import org.apache.iceberg.CatalogProperties;
import org.apache.iceberg.CatalogUtil;
import org.apache.iceberg.catalog.Catalog;
import org.apache.iceberg.jdbc.JdbcCatalog;
import org.apache.iceberg.rest.RESTCatalogAdapter;
import org.apache.iceberg.rest.RESTCatalogServlet;
import org.eclipse.jetty.compression.gzip.GzipCompression;
import org.eclipse.jetty.compression.server.CompressionHandler;
import org.eclipse.jetty.ee10.servlet.ServletContextHandler;
import org.eclipse.jetty.ee10.servlet.ServletHolder;
import org.eclipse.jetty.server.Server;
import org.eclipse.jetty.server.ServerConnector;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

public final class LocalRestCatalog {
  private static final Logger LOG = LoggerFactory.getLogger(LocalRestCatalog.class);

  /** Launcher settings; every other key of the file is a catalog property. */
  static final String HOST = "rest.host";

  static final String PORT = "rest.port";
  static final String NAME = "catalog.name";

  private LocalRestCatalog() {}

  public static void main(String[] args) throws Exception {
    if (args.length != 1) {
      System.err.println("usage: LocalRestCatalog FILE.properties");
      System.exit(2);
    }
    Map<String, String> props = readProperties(Path.of(args[0]));
    String host = props.remove(HOST);
    String port = props.remove(PORT);
    String name = props.remove(NAME);
    if (host == null || host.isEmpty()) {
      throw new IllegalArgumentException(HOST + " is missing in " + args[0]);
    }
    if (port == null || !port.matches("[0-9]{1,5}")) {
      throw new IllegalArgumentException(PORT + " must be a port number in " + args[0]);
    }
    if (name == null || name.isEmpty()) {
      name = "local";
    }
    // The defaults RESTCatalogServer uses: a JDBC catalog, schema V1 (with views).
    props.putIfAbsent(CatalogProperties.CATALOG_IMPL, JdbcCatalog.class.getName());
    props.putIfAbsent("jdbc.schema-version", "V1");
    LOG.info("Catalog {} with properties {}", name, masked(props));

    // No Hadoop configuration: the JDBC catalog with io-impl S3FileIO needs none.
    Catalog catalog = CatalogUtil.buildIcebergCatalog(name, props, null);
    RESTCatalogServlet servlet = new RESTCatalogServlet(new RESTCatalogAdapter(catalog));

    Server server = new Server();
    ServerConnector connector = new ServerConnector(server);
    connector.setHost(host);
    connector.setPort(Integer.parseInt(port));
    server.addConnector(connector);

    ServletContextHandler context = new ServletContextHandler(ServletContextHandler.NO_SESSIONS);
    context.addServlet(new ServletHolder(servlet), "/*");
    CompressionHandler compression = new CompressionHandler();
    compression.putCompression(new GzipCompression());
    context.insertHandler(compression);
    server.setHandler(context);
    // SIGTERM (tests/cluster/down.sh) stops Jetty, then the catalog's JDBC connections close.
    server.setStopAtShutdown(true);
    Runtime.getRuntime()
        .addShutdownHook(
            new Thread(
                () -> {
                  if (catalog instanceof AutoCloseable closeable) {
                    try {
                      closeable.close();
                    } catch (Exception e) {
                      LOG.warn("Closing the catalog failed", e);
                    }
                  }
                }));

    server.start();
    LOG.info("Iceberg REST catalog listening on http://{}:{}/", host, connector.getLocalPort());
    server.join();
  }

  private static Map<String, String> readProperties(Path file) throws IOException {
    Properties p = new Properties();
    try (Reader r = Files.newBufferedReader(file, StandardCharsets.UTF_8)) {
      p.load(r);
    }
    Map<String, String> out = new TreeMap<>();
    for (String k : p.stringPropertyNames()) {
      out.put(k, p.getProperty(k).trim());
    }
    return out;
  }

  private static Map<String, String> masked(Map<String, String> props) {
    Map<String, String> out = new TreeMap<>(props);
    out.replaceAll(
        (k, v) -> k.contains("secret") || k.contains("password") || k.contains("token") ? "****" : v);
    return out;
  }
}
